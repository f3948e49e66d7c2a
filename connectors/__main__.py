"""``python -m connectors`` runs the siem-export command line."""

from connectors.cli import main

if __name__ == "__main__":  # not when a worker process imports it (spawn)
    main()
