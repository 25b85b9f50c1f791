"""Training package: each step is its own command.

    python -m training.prepare   text files -> tokenizer + train.bin / val.bin / meta.json
    python -m training.train     --model bdh|gpt2 --config training/configs/<preset>.json
    python -m training.evaluate  perplexity of a checkpoint on a token or text file
    python -m training.compare   both models side by side -> Markdown report + curves PNG
    python -m training.kaggle    bundle the code for the Kaggle notebook
"""
