"""genlab.models"""
