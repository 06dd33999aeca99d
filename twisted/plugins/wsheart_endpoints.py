from wsheart.reuseport import ReusePortParser

reuseport = ReusePortParser()
