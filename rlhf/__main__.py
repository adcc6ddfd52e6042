from rlhf.cli import entry

entry()
