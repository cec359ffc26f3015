"""The contention topology: a storage client, an iSCSI target and N bulk sources.

::

       bulk1 ... bulkN          bulk download servers, or floods
            \\   |   /
             [  s1  ] ---- target    tgtd serving a file-backed LUN
                 |
              client             the machine under memory pressure

The client's access link (``client-eth0`` <-> ``s1-eth1``) is the bottleneck:
its bandwidth is ``bw_client``; every other link gets ``bw``. The target and
every bulk host therefore can send faster than the client can receive, so the
bulk traffic and the storage traffic compete for the client's link and, behind
it, for the client's packet buffers: the contention the project reproduces.

Addresses and ports are fixed so that scenarios and labs can name them:

========  ==============  ===================  ============
host      IPv4            MAC                  switch port
========  ==============  ===================  ============
client    10.0.0.1/24     02:00:00:00:00:01    s1-eth1
target    10.0.0.2/24     02:00:00:00:00:02    s1-eth2
bulk<i>   10.0.0.(10+i)   02:00:00:00:00:XX    s1-eth(2+i)
========  ==============  ===================  ============

(XX is the last address byte in hex.) Link options use Mininet's ``TCLink``
names (``bw`` in Mbit/s, ``delay`` as a string, ``loss`` in percent,
``max_queue_size`` in packets), so the topology works as Mininet users expect::

    mn --custom topologies/contention.py --topo contention,2 \\
       --switch lxbr --controller none --link tc --test pingall

(On a machine where dockerd has run, its FORWARD DROP stops a root-namespace bridge:
prefix ``unshare --net --``. The testbed's own backend keeps its bridge in a namespace.)

The hosts, addresses, ports and link options are not written here but in
``contention_layout.py``, plain data without Mininet that the testbed's Docker
backend reads as well; this file turns them into a Mininet ``Topo``. Besides that
file and the standard library it imports ``mininet`` only: Debian's
``/usr/bin/mn`` runs it with the system Python. Parameter checking with one-line
errors lives in the testbed package (``testbed.backends.base.ContentionParams``),
which builds this Topo.
"""

import os
import sys

from mininet.topo import Topo


def _checkout() -> str:
    "The folder that holds topologies/, from the name this code was compiled with."
    here = os.path.abspath( _checkout.__code__.co_filename )
    return os.path.dirname( os.path.dirname( here ) )


try:
    import topologies.contention_layout as layout
except ImportError:
    # `mn --custom` exec()s this file alone, with Debian's Python: no package and
    # no __file__. Its checkout goes on the path, and the import is made again.
    sys.path.insert( 0, _checkout() )
    import topologies.contention_layout as layout

MAX_BULK, SUBNET = layout.MAX_BULK, layout.SUBNET
host_ip, host_mac = layout.host_ip, layout.host_mac


class ContentionTopo( Topo ):
    "Client, target and n bulk hosts on one switch; the client link is the bottleneck."

    # pylint: disable=arguments-differ
    def build( self, *args, **params ):
        """The parameters are contention_layout.contention_links's:
           n, bw_client, bw, delay, loss, queue, trunk_delay, trunk_loss
           (mn --topo contention,N passes n by position)."""
        switch = self.addSwitch( layout.SWITCH )
        for host, _switch, opts in layout.contention_links( *args, **params ):
            self.addLink( self._host( host ), switch, **opts )

    def _host( self, name: str ) -> str:
        "Add a host with its fixed addresses."
        return self.addHost( name, ip=layout.host_cidr( name ), mac=host_mac( name ) )

    linkOpts = staticmethod( layout.link_opts )    # kept for code that called it


topos = { 'contention': ContentionTopo }
