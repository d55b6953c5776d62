from services.payment_worker.worker import main

main()
