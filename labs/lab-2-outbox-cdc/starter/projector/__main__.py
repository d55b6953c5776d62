from .projector import main

main()
