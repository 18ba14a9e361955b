from core0.cli import main

main()
