from services.payments_api.app import main

main()
