"""Train Show and Tell, then test the best checkpoint.

    python train.py                                   # Flickr8k paper baseline (configs/flickr8k.yaml)
    python train.py --config configs/demo.yaml        # offline synthetic demo on CPU
    python train.py --help                            # every option
"""

from showtell.train import main

if __name__ == "__main__":
    main()
