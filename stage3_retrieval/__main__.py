from stage3_retrieval.cli import entry

raise SystemExit(entry())
