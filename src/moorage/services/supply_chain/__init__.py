"""What is in an image and who vouches for it: scanning, SBOMs, vulnerability and signature
policies."""
