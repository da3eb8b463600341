from icrl_cli.app import main

main()
