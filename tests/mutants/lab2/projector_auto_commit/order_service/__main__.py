from services.order_service.app import main

main()
