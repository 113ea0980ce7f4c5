from fake_engine_server import main

if __name__ == "__main__":
    main("vllm")
