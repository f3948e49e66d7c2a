"""``python -m connectors`` runs the siem-export command line."""

from connectors.cli import main

main()
