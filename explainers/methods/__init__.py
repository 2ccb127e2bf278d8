"""Attribution methods: the interface (``base``), the loader (``registry``), and the shipped ones."""
