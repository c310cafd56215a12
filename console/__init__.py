"""The web console for support agents and marketers: server-rendered pages on top of the other packages."""
