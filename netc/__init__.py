"""netc: a Caffe-style declarative network compiler."""
__version__ = "0.1.0"
