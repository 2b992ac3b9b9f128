from daskflow.cli import main

main()
