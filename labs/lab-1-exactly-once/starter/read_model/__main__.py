from .consumer import main

main()
