"""Stand-in for torchvision (not installable next to torch 2.13.0+cpu here): only what MTCNN.detect uses."""
