from softudc.cli.main import main

main()
