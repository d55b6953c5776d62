from services.order_api.app import main

main()
