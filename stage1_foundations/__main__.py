from stage1_foundations.cli import entry

raise SystemExit(entry())
