"""A stand-in for ``os.environ`` that notes every name looked up: what a test puts in a fresh
interpreter before importing the gateway, to see what the imports read. Imports nothing."""


class NamesRead(dict):
    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def __contains__(self, name):
        self.read.add(name)
        return super().__contains__(name)
