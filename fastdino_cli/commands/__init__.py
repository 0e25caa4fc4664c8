"""One module per subcommand group; ``cli.py`` only registers them."""
