"""Model providers behind one interface (``ChatModel``): Anthropic, Bedrock, offline."""
