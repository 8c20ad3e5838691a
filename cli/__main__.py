from synthfed.cli.app import main

main()
