"""Monitoring served traffic: drift of inputs, embeddings and outputs, and accuracy estimated before labels."""
