from no_flush import install
from services.read_model.consumer import main

install("read_model")
main()
