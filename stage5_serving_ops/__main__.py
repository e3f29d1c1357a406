from stage5_serving_ops.cli import entry

raise SystemExit(entry())
