"""One module per ``bench`` sub-command."""
