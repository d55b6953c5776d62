from services.projector.projector import main

main()
