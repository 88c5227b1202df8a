"""One module per ``baichuan`` subcommand (see ``baichuan.cli``)."""
