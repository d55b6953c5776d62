from .invalidator import main

main()
