"""genlab.tokenizers"""
