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

This file imports only ``mininet``: Debian's ``/usr/bin/mn`` runs it with the
system Python. Parameter checking with one-line errors lives in the testbed
package (``testbed.backends.base.ContentionParams``), which builds this Topo.
"""

from mininet.topo import Topo

MAX_BULK = 64
SUBNET = '10.0.0.0/24'


def host_ip( name ):
    "Fixed IPv4 address (without prefix) of a host of this topology."
    if name == 'client':
        return '10.0.0.1'
    if name == 'target':
        return '10.0.0.2'
    if name.startswith( 'bulk' ) and name[ 4: ].isdigit():
        return '10.0.0.%d' % ( 10 + int( name[ 4: ] ) )
    raise ValueError( 'contention topology has no host %r' % name )


def host_mac( name ):
    "Fixed, locally administered MAC address of a host of this topology."
    last = int( host_ip( name ).rsplit( '.', 1 )[ 1 ] )
    return '02:00:00:00:00:%02x' % last


class ContentionTopo( Topo ):
    "Client, target and n bulk hosts on one switch; the client link is the bottleneck."

    # pylint: disable=arguments-differ,too-many-arguments
    def build( self, n=2, bw_client=10, bw=100, delay=0, loss=0, queue=None,
               trunk_delay=0, trunk_loss=0 ):
        """n: number of bulk hosts (0..64)
           bw_client: Mbit/s of the client's access link (the bottleneck)
           bw: Mbit/s of every other link
           delay: one-way delay of the client link, ms
           loss: random loss on the client link, percent
           queue: queue length of every shaped interface, packets (None: default)
           trunk_delay, trunk_loss: the same for the target and bulk links"""
        n, bw_client, bw = int( n ), float( bw_client ), float( bw )
        switch = self.addSwitch( 's1' )
        self.addLink( self._host( 'client' ), switch, port1=0, port2=1,
                      **self.linkOpts( bw_client, delay, loss, queue ) )
        trunk = self.linkOpts( bw, trunk_delay, trunk_loss, queue )
        self.addLink( self._host( 'target' ), switch, port1=0, port2=2,
                      **trunk )
        for i in range( 1, n + 1 ):
            self.addLink( self._host( 'bulk%d' % i ), switch,
                          port1=0, port2=2 + i, **trunk )

    def _host( self, name ):
        "Add a host with its fixed addresses."
        return self.addHost( name, ip=host_ip( name ) + '/24',
                             mac=host_mac( name ) )

    @staticmethod
    def linkOpts( bw, delay, loss, queue ):
        "TCLink options for one link; zero delay/loss are left out."
        opts = { 'bw': bw }
        if delay:
            opts[ 'delay' ] = '%gms' % float( delay )
        if loss:
            opts[ 'loss' ] = float( loss )
        if queue is not None:
            opts[ 'max_queue_size' ] = int( queue )
        return opts


topos = { 'contention': ContentionTopo }
