from rlft.run.cli import main

main()
