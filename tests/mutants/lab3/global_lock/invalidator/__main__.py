from services.invalidator.invalidator import main

main()
