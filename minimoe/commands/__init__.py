"""One module per `minimoe` subcommand; see minimoe/cli.py."""
