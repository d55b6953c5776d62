from services.cdc_relay.relay import main

main()
