"""vnetd: joins the multicast reach of VNETs across underlay segments that multicast does not cross."""
