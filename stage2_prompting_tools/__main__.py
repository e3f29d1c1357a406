from stage2_prompting_tools.cli import entry

raise SystemExit(entry())
