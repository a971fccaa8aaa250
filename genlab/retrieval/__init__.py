"""genlab.retrieval"""
