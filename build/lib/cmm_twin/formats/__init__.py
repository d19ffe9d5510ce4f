"""Writers of the CMM file formats (Q-DAS AQDEF, Zeiss Calypso table files, QIF 3 results), shared by
the simulator (raw readings, as a CMM writes them) and the outbox sink (compensated results). The
gateway's readers of the same formats are its sources (`cmm_twin.gateway.sources`)."""
