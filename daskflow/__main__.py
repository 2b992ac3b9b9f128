from daskflow.cli import main

if __name__ == "__main__":  # `flow-runs retry` starts LocalCluster workers, which import this module again
    main()
