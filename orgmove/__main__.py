from orgmove.cli import main

main()
