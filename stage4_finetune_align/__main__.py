from stage4_finetune_align.cli import entry

raise SystemExit(entry())
