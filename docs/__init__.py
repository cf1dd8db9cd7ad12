"""Documentation tools: the README's before/after figure (`python -m docs.figures`) and the configuration
table of docs/serving.md (`python -m docs.config_table`). Not part of the installed packages."""
