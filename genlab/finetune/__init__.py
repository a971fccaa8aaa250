"""genlab.finetune"""
