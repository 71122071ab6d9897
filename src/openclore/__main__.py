from openclore.cli.main import main

main()
