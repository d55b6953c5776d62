from services.read_model.consumer import main

main()
