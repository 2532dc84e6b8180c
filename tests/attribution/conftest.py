import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # for the shared tiny models in _models.py
