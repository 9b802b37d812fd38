# Unpack a zip so that Destination appears complete or not at all: extract into a sibling temporary
# directory, then rename it into place. An interrupted run leaves only the temporary directory, which the
# next run deletes and redoes; an existing Destination is never touched (releases of a runtime or of nginx
# are immutable; running binaries cannot be overwritten on Windows anyway).
# Inner: a folder inside the archive that becomes Destination ('' = the whole archive).
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)][string]$Archive,
    [Parameter(Mandatory)][string]$Destination,
    [string]$Inner = ''
)
# win_powershell starts every script with Changed = $true.
$Ansible.Changed = $false
$ErrorActionPreference = 'Stop'
if (Test-Path -LiteralPath $Destination) { return }

$Ansible.Changed = $true
$partial = "$Destination.partial"
if ($PSCmdlet.ShouldProcess($Destination, "Unpack $Archive")) {
    if (Test-Path -LiteralPath $partial) { Remove-Item -LiteralPath $partial -Recurse -Force }
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    [System.IO.Compression.ZipFile]::ExtractToDirectory($Archive, $partial)
    $source = if ($Inner) { Join-Path $partial $Inner } else { $partial }
    Move-Item -LiteralPath $source -Destination $Destination
    if (Test-Path -LiteralPath $partial) { Remove-Item -LiteralPath $partial -Recurse -Force }
}
